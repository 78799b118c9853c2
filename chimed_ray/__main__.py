"""`python -m chimed_ray <stage> ...`"""

import sys

from chimed_ray.cli import main

sys.exit(main())
