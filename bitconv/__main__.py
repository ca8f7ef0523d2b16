from bitconv._entry import main

main()
