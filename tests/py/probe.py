"""A real boto3 client: resolve credentials with the default chain, call
GetCallerIdentity against the endpoint given as argv[1], print the result."""
import json
import sys

import boto3

session = boto3.session.Session()
creds = session.get_credentials()
if creds is None:
    sys.exit("boto3 found no credentials")
sts = session.client("sts", endpoint_url=sys.argv[1])
ident = sts.get_caller_identity()
print(json.dumps({"arn": ident["Arn"], "method": creds.method}))
