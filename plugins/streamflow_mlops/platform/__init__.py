"""Running the platform on one machine: the embedded Postgres, the demo, the bento build."""
