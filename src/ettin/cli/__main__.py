from ettin.cli import main

main()
