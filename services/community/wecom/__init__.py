"""WeCom (企业微信) adapters of the community service: the callback crypto and the
customer-group change events it receives."""
