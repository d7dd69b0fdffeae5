"""The community service: customer groups (社群), their members, live-code routing
into pools of groups, daily check-in and chain orders."""
