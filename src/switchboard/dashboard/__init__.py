"""The operator dashboard: static HTML/CSS/JS served by the gateway at /dashboard."""
