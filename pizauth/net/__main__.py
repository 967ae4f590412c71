import sys

from pizauth.net.child import main

main(sys.argv[1:])
