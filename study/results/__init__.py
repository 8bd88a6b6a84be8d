"""What a study found, for people: the table, flags and report.md (report), which backend SDPA's
default dispatch picked (dispatch), the figures (plots), the dashboard note and the trials' logs
(publish). Reads trials; never measures."""
