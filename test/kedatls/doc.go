// Package kedatls runs KEDA's own external scaler client
// (github.com/kedacore/keda/v2/pkg/scalers: NewExternalScaler and
// NewExternalPushScaler, which build their TLS configuration from the
// trigger's enableTLS, caCert, tlsClientCert and tlsClientKey as the
// operator does) against the scaler with mutual TLS, through a rotation
// of the scaler's certificates. Its own module: KEDA's scalers link every
// cloud SDK KEDA supports, which the agent's go.mod does without.
package kedatls
