#!/bin/sh
# Run by `nc -e` with the TCP connection as stdin and stdout: send the prepared request,
# then read the answer until the server closes. Piping the request into nc instead would
# half-close the connection at the request's end, and the server may drop a half-closed
# client before it answers.
cat /tmp/http-request
exec cat >/tmp/http-response
