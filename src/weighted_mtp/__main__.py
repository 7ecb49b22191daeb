from weighted_mtp.cli import main

main()
