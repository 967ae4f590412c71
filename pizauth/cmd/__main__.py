import sys

from pizauth.cmd.child import main

main(sys.argv[1:])
