"""OpenAI's Batch API (`/v1/batches`) over the Files API (`/v1/files`): requests run in the background, through the
same handlers as live ones. See docs/api.md "Batches"."""
