from fastsft.cli import main

raise SystemExit(main())
