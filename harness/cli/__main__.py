import sys

from mali_hil.harness.cli import main

sys.exit(main())
