"""Crash trials: kill training and data preparation at fault points and check nothing was lost."""
