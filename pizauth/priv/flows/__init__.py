"""The flows that move tokens: logins (code and device), refreshes, endpoint and secret
resolution, revocation at the provider, and the pages the browser is shown."""
