"""The published artifact as the service reads it: manifest, version open/verify, hot-reload holder with
leases, stored images and takedowns. No FastAPI here."""
