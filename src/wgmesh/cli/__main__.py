"""python -m wgmesh.cli"""

import sys

from wgmesh.cli import main

sys.exit(main())
