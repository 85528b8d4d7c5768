"""Settings, table schemas and the month calendar: the bottom layer, importing nothing else of the library."""
