"""``python -m rayrlhf.tasks.toyworld OUT_DIR [--seed N]``: write the toyworld datasets."""

from rayrlhf.tasks.toyworld.write import main

main()
