from hepdeploy.cli import main

main()
