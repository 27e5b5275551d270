"""The runbook's node procedures: provision, reprovision, drain, decommission, rollout."""
