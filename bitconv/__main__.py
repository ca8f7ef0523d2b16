from bitconv.cli import main

main()
