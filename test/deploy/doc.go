// Package deploy holds the tests of deploy/: its own module, so that
// helm, kustomize and the Prometheus Operator's types stay out of the
// agent's go.mod.
package deploy
