package deploy

import "testing"

// A driver reload, evaluated by promtool on deploy/'s own rules: NVML
// down for a minute with every GPU reported lost, then back, pages nobody
// (n1 is in neither answer below); a GPU lost for good fires GPULost
// after 3 minutes, and NVML down for good fires GPUAgentNVMLDown after 2.
func TestDriverAlerts(t *testing.T) {
	// 15 s steps. n1: a reload of one minute (steps 4-7), every GPU lost
	// meanwhile. n2: GPU 1 lost from step 4 on, for good. n3: the driver
	// unloaded from step 4 on.
	tests := `rule_files: [rules.yaml]
evaluation_interval: 15s
tests:
  - interval: 15s
    input_series:
      - series: 'gpu_agent_nvml_up{node="n1"}'
        values: '1x3 0x3 1x30'
      - series: 'gpu_agent_device_up{node="n1", gpu="0", UUID="GPU-a"}'
        values: '1x3 0x3 1x30'
      - series: 'gpu_agent_device_up{node="n2", gpu="1", UUID="GPU-b"}'
        values: '1x3 0x33'
      - series: 'gpu_agent_nvml_up{node="n2"}'
        values: '1x36'
      - series: 'gpu_agent_nvml_up{node="n3"}'
        values: '1x3 0x33'
    alert_rule_test:
      - eval_time: 2m30s
        alertname: GPULost
        exp_alerts: []
      - eval_time: 1m45s
        alertname: GPUAgentNVMLDown
        exp_alerts: []
      - eval_time: 3m30s
        alertname: GPUAgentNVMLDown
        exp_alerts:
          - exp_labels: {severity: critical, node: n3}
            exp_annotations:
              summary: NVML on n3 does not answer
              description: The NVIDIA driver on node n3 answers that it is not loaded or not initialised (a driver reload or upgrade); the agent re-initialises NVML with backoff and serves no GPU metrics until it answers.
      - eval_time: 4m15s
        alertname: GPULost
        exp_alerts:
          - exp_labels: {severity: critical, node: n2, gpu: "1", UUID: GPU-b}
            exp_annotations:
              summary: GPU 1 on n2 is lost
              description: NVML has reported GPU 1 (GPU-b) on node n2 lost for 3 minutes and the agent has not found it again; the node needs draining and a reset.
`
	promtoolTestRules(t, tests)
}
