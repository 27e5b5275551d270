"""The runbook's node procedures: provision, reprovision, drain, decommission, power,
rollout."""
