// Signing in with Cognito's JSON API: SRP (USER_SRP_AUTH: the password never leaves the page), then the
// authenticator-app code (TOTP) the pool requires, set up at the first sign-in. The local demo pool
// (config.js says passwordSignIn) takes the password itself: moto checks no SRP proof.

import { passwordVerifier, srpStart } from "./srp.js";

const MAX_STEPS = 4; // password, then at most a code (or a code's setup): more is a loop

// One call of Cognito's JSON API: {status, body}; a network failure rejects.
export async function cognitoCall(cognito, action, payload, keepalive) {
  const response = await fetch(cognito.endpoint, {
    method: "POST",
    headers: {
      "Content-Type": "application/x-amz-json-1.1",
      "X-Amz-Target": "AWSCognitoIdentityProviderService." + action,
    },
    body: JSON.stringify(payload),
    credentials: "omit",
    referrerPolicy: "no-referrer",
    keepalive: Boolean(keepalive),
  });
  return { status: response.status, body: await response.json().catch(() => null) };
}

function respond(cognito, challenge, session, responses) {
  return cognitoCall(cognito, "RespondToAuthChallenge", {
    ChallengeName: challenge,
    ClientId: cognito.clientId,
    Session: session,
    ChallengeResponses: responses,
  });
}

function refusal(answer) {
  const type = (answer.body && answer.body.__type) || "";
  if (type.includes("CodeMismatch") || type.includes("EnableSoftwareTokenMFA")) {
    return "The authenticator code did not match: sign in again and enter the current code.";
  }
  if (type.includes("ExpiredCode")) return "The code expired: sign in again.";
  return "Sign-in failed: check your email and password.";
}

// {tokens: AuthenticationResult} or {error: a sentence for the clinician}. `askCode({secret, email})` shows the
// code field (with the secret to add to an authenticator app, at the first sign-in) and resolves with the code.
export async function signInWithCognito(cognito, email, password, askCode) {
  let answer;
  if (cognito.passwordSignIn) {
    answer = await cognitoCall(cognito, "InitiateAuth", {
      AuthFlow: "USER_PASSWORD_AUTH",
      ClientId: cognito.clientId,
      AuthParameters: { USERNAME: email, PASSWORD: password },
    });
  } else {
    const start = srpStart();
    answer = await cognitoCall(cognito, "InitiateAuth", {
      AuthFlow: "USER_SRP_AUTH",
      ClientId: cognito.clientId,
      AuthParameters: { USERNAME: email, SRP_A: start.srpA },
    });
    const body = answer.body || {};
    if (answer.status === 200 && body.ChallengeName === "PASSWORD_VERIFIER") {
      const proof = await passwordVerifier(start, cognito.userPoolId, password, body.ChallengeParameters || {});
      answer = await respond(cognito, "PASSWORD_VERIFIER", body.Session, proof);
    }
  }
  for (let step = 0; step < MAX_STEPS; step += 1) {
    const body = answer.body || {};
    if (answer.status !== 200) return { error: refusal(answer) };
    if (body.AuthenticationResult) return { tokens: body.AuthenticationResult };
    const username = (body.ChallengeParameters && body.ChallengeParameters.USERNAME) || email;
    if (body.ChallengeName === "SOFTWARE_TOKEN_MFA") {
      const code = await askCode({ email: email });
      answer = await respond(cognito, "SOFTWARE_TOKEN_MFA", body.Session, {
        USERNAME: username,
        SOFTWARE_TOKEN_MFA_CODE: code,
      });
    } else if (body.ChallengeName === "MFA_SETUP") {
      const associated = await cognitoCall(cognito, "AssociateSoftwareToken", { Session: body.Session });
      if (associated.status !== 200 || !associated.body || !associated.body.SecretCode) {
        return { error: "The authenticator app could not be set up: try again, or ask your administrator." };
      }
      const code = await askCode({ email: email, secret: associated.body.SecretCode });
      const verified = await cognitoCall(cognito, "VerifySoftwareToken", {
        Session: associated.body.Session,
        UserCode: code,
        FriendlyDeviceName: "LungScan",
      });
      if (verified.status !== 200 || !verified.body || verified.body.Status !== "SUCCESS") {
        return { error: refusal({ body: { __type: "CodeMismatch" } }) };
      }
      answer = await respond(cognito, "MFA_SETUP", verified.body.Session, { USERNAME: username });
    } else {
      const step = body.ChallengeName || "an unknown step";
      return { error: "Your account needs a step this page does not offer (" + step + "): ask your administrator." };
    }
  }
  return { error: "Sign-in failed: check your email and password." };
}
