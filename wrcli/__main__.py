from wrcli.cli import main

main()
