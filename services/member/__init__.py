"""The member service: members and identities, tiers, the points ledger with expiry,
stored value and orders from every channel."""
