# Debian's OpenStack packages ask debconf questions (database setup,
# endpoint registration): answer "no" to all of them non-interactively; the
# agent/operator configures the services.
export DEBIAN_FRONTEND=noninteractive
