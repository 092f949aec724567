from inferkit.cli import main

main()
