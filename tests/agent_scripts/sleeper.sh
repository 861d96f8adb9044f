echo "sleeper $CLOVE_AGENT_NAME up with socket $1"
exec sleep 3600
