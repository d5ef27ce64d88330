import sys

from nodeos.cli.image import main

sys.exit(main(sys.argv[1:] if sys.argv[1:2] == ["image"] else ["image", *sys.argv[1:]]))
