from clusterip.cli import main

main()
