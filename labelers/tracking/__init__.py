"""2D point trackers: Lucas-Kanade, DIS-chained flow, CoTracker, and the backend registry."""
