"""The Meta-World simulator: scene, scripted rollouts with ground truth, worker processes.

The constants below describe the dataset the simulator writes; the Open-X registry's
`metaworld_sim` entry, which reads it back, uses the same ones.
"""

# Control rate (SawyerXYZEnv default frame_skip=5, xyz_base.xml timestep 0.0025 s; a test
# checks both against a live env): one env step = 12.5 ms, i.e. 80 Hz control.
METAWORLD_FRAME_SKIP = 5
METAWORLD_TIMESTEP_S = 0.0025
METAWORLD_CONTROL_HZ = 1.0 / (METAWORLD_FRAME_SKIP * METAWORLD_TIMESTEP_S)

# 4-d in [-1, 1]: mocap xyz delta (x 1 cm) + gripper effort.
ACTION_ENCODING = "metaworld_delta_xyz_gripper"
# Hand body xyz (world, m) + finger distance / 0.1 m in [0, 1].
PROPRIO_ENCODING = "eef_xyz_m_gripper_open"
