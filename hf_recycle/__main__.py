import sys

from hf_recycle.cli import main

sys.exit(main())
