from telephony_edge.cli import main

raise SystemExit(main())
