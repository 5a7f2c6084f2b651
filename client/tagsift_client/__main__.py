from tagsift_client.cli import main

raise SystemExit(main())
