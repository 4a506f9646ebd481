from mali_hil.harness.worker.serve import main

main()
