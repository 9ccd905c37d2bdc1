from fastmta.cli import main

raise SystemExit(main())
