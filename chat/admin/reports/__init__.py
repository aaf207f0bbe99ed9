"""Read-only reports for staff: token usage per day drawn as a server-side SVG chart
(`usage`) and CSV transcripts (`transcripts`). Reads only; the admin renders the results."""
