"""The warehouse side: Great Expectations validation of a drop, transactional loads, ingestion runs."""
