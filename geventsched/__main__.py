import sys

from geventsched.cli import main

sys.exit(main())
