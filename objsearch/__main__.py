from objsearch.cli import main

main()
