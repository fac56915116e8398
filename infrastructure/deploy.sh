#!/usr/bin/env bash
# Deploy LungScan: build the image, deploy the stack, publish the page and the default model.
#
#   infrastructure/deploy.sh [STACK_NAME] [extra `sam deploy` options...]
#
# Needs Docker (sam build of the image), the AWS CLI and credentials for the target account.
# First run (no samconfig.toml): `sam deploy --guided` asks for the stack settings and saves them.
# The guided deploy's defaults are the safe ones (template.yaml): an API key on every stage, 10 reserved
# executions, the account-wide API Gateway logging role left alone. Opening the API is explicit:
#   infrastructure/deploy.sh lungscan-dev --parameter-overrides RequireApiKey=false
# Env: STACK_NAME (default lungscan), SAM_CLI (default: sam on PATH, else .venv-sam/bin/sam),
#      PYTHON (default .venv/bin/python), MODEL_DIR (default models/malignancy-screen),
#      MODEL_EXTRA_DIRS (default models/iq-oth-3class models/chest-ct-4class),
#      PAGE_API_KEY=1 to put the API key in the page's config.js (anyone who loads the page can read it).
# Docs: https://docs.aws.amazon.com/serverless-application-model/latest/developerguide/sam-cli-command-reference-sam-deploy.html
set -euo pipefail

cd "$(dirname "$0")/.."
STACK_NAME="${1:-${STACK_NAME:-lungscan}}"
shift || true
SAM="${SAM_CLI:-$(command -v sam || echo .venv-sam/bin/sam)}"
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
MODEL_DIR="${MODEL_DIR:-models/malignancy-screen}"
# The other bundles the stack serves (template.yaml ModelNames), published after the default.
MODEL_EXTRA_DIRS="${MODEL_EXTRA_DIRS:-models/iq-oth-3class models/chest-ct-4class}"
export SAM_CLI_TELEMETRY="${SAM_CLI_TELEMETRY:-0}"

echo "==> sam build"
"$SAM" build

echo "==> sam deploy (stack $STACK_NAME)"
if [ -f samconfig.toml ]; then
  "$SAM" deploy --stack-name "$STACK_NAME" "$@"
else
  # Answer: CAPABILITY_IAM yes, "create managed ECR repositories" yes, save to samconfig.toml yes.
  "$SAM" deploy --guided --stack-name "$STACK_NAME" "$@"
fi

output() {
  aws cloudformation describe-stacks --stack-name "$STACK_NAME" \
    --query "Stacks[0].Outputs[?OutputKey=='$1'].OutputValue" --output text
}
API_URL="$(output ApiUrl)"
SITE_URL="$(output SiteUrl)"
SITE_BUCKET="$(output SiteBucketName)"
MODEL_BUCKET="$(output ModelBucketName)"
DISTRIBUTION_ID="$(output DistributionId)"
# Present only when the stack requires an API key (RequireApiKey, "true" unless set to "false").
API_KEY_ID="$(output ApiKeyId)"
if [ "$API_KEY_ID" = "None" ]; then API_KEY_ID=""; fi
PAGE_KEY=""
if [ -n "$API_KEY_ID" ] && [ "${PAGE_API_KEY:-0}" = "1" ]; then
  PAGE_KEY="$(aws apigateway get-api-key --api-key "$API_KEY_ID" --include-value --query value --output text)"
fi

# The committed frontend/config.js stays empty (same origin, for `make run`); the deployed
# copy is written into a staging folder so the working tree is not modified.
echo "==> site -> s3://$SITE_BUCKET"
STAGING="$(mktemp -d)"
trap 'rm -rf "$STAGING"' EXIT
cp -R frontend/. "$STAGING/"
# The upload limit comes from the core, so the page refuses exactly what the API would.
MAX_UPLOAD_BYTES="$("$PYTHON" -c 'from lungscan.inputs.imaging import DEFAULT_LIMITS; print(DEFAULT_LIMITS.max_bytes)')"
if [ -n "$PAGE_KEY" ]; then
  printf 'window.LUNGSCAN_CONFIG = {apiUrl: "%s", maxUploadBytes: %s, apiKey: "%s"};\n' \
    "$API_URL" "$MAX_UPLOAD_BYTES" "$PAGE_KEY" > "$STAGING/config.js"
else
  printf 'window.LUNGSCAN_CONFIG = {apiUrl: "%s", maxUploadBytes: %s};\n' "$API_URL" "$MAX_UPLOAD_BYTES" \
    > "$STAGING/config.js"
fi
# Where the page signs clinicians in: Cognito's JSON API (InitiateAuth) with the stack's app client.
REGION="$(aws configure get region || echo "${AWS_REGION:-${AWS_DEFAULT_REGION:-}}")"
# The page signs in with SRP against this pool, then the TOTP code the pool requires (frontend/sign-in.js).
printf 'window.LUNGSCAN_CONFIG.cognito = {endpoint: "https://cognito-idp.%s.amazonaws.com/", clientId: "%s", region: "%s", userPoolId: "%s"};\n' \
  "$REGION" "$(output UserPoolClientId)" "$REGION" "$(output UserPoolId)" >> "$STAGING/config.js"
# Long-lived cache for styles and images; index.html and every script are revalidated on every load: the
# page's ES modules import one another, and a cached module from an older deploy beside a newer one fails to load.
aws s3 sync "$STAGING/" "s3://$SITE_BUCKET/" --delete \
  --exclude index.html --exclude "*.js" \
  --cache-control "public, max-age=86400"
# Every .js (config.js and the modules) as text/javascript: browsers refuse a module script of any other type, and
# the CLI would guess the type from this machine's MIME table. --delete here removes scripts no longer in frontend/.
aws s3 sync "$STAGING/" "s3://$SITE_BUCKET/" --delete \
  --exclude "*" --include "*.js" \
  --content-type "text/javascript; charset=utf-8" --cache-control "no-cache"
aws s3 cp "$STAGING/index.html" "s3://$SITE_BUCKET/index.html" --cache-control "no-cache"
aws cloudfront create-invalidation --distribution-id "$DISTRIBUTION_ID" --paths "/*" >/dev/null

# First model publish: validates the bundle, then lungscan.registry.publish_bundle uploads
# models/<name>/<version>/, checks what landed, then moves models/<name>/latest.json (see docs/training.md).
for bundle in "$MODEL_DIR" $MODEL_EXTRA_DIRS; do
  echo "==> model $bundle -> s3://$MODEL_BUCKET"
  "$PYTHON" -m training publish --bucket "$MODEL_BUCKET" "$bundle"
done

echo "Site: $SITE_URL"
echo "API:  $API_URL  (POST $API_URL/predict)"
if [ -n "$API_KEY_ID" ]; then
  # The key's value is a secret: never print it here (CI logs keep it). Fetch it when needed:
  echo "API key required on every route (header x-api-key). Its value, for the hospital system:"
  echo "  aws apigateway get-api-key --api-key $API_KEY_ID --include-value --query value --output text"
  if [ -n "$PAGE_KEY" ]; then
    echo "PAGE_API_KEY=1: the page on $SITE_URL sends the key (anyone who loads the page can read it)."
  else
    echo "The page on $SITE_URL has no key, so the API refuses it: redeploy with PAGE_API_KEY=1 (the key"
    echo "becomes readable by anyone who loads the page), put a login in front, or, for a throwaway dev stack"
    echo "only, open the API with --parameter-overrides RequireApiKey=false."
  fi
fi
