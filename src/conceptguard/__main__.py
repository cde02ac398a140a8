from conceptguard.cli import main

main()
