import sys

from rayrlhf.cli import main

sys.exit(main())
