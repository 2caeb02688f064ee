"""Sources and sinks behind small protocols; nothing here knows about learning."""
