"""The gateway: OAuth2, claim catalog, consent, the check pipeline, the Flask app."""
