import sys

from gendet.cli import main

sys.exit(main())
